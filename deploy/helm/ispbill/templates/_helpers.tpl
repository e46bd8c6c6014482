{{/* Names, labels and the shared pod pieces of every ispbill component. */}}

{{- define "ispbill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ispbill.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ispbill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "ispbill.labels" -}}
helm.sh/chart: {{ include "ispbill.chart" . }}
{{ include "ispbill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ispbill
{{- end }}

{{- define "ispbill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ispbill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "api") */}}
{{- define "ispbill.componentLabels" -}}
{{ include "ispbill.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ispbill.componentSelectorLabels" -}}
{{ include "ispbill.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ispbill.allInOne" -}}
{{- if eq .Values.mode "all-in-one" }}true{{ end }}
{{- end }}

{{- define "ispbill.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "ispbill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ispbill.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ispbill.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "ispbill.fullname" . }}
{{- end }}
{{- end }}

{{/* The environment every container gets: the ConfigMap, then credentials from the Secret. */}}
{{- define "ispbill.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "ispbill.fullname" . }}
env:
  {{- if include "ispbill.allInOne" . }}
  - name: ISPBILL_LEDGER
    value: sqlite
  {{- else }}
  - name: ISPBILL_LEDGER
    valueFrom:
      secretKeyRef:
        name: {{ include "ispbill.secretName" . }}
        key: {{ .Values.secrets.keys.ledgerDsn }}
  {{- end }}
  - name: ISPBILL_SMTP_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ include "ispbill.secretName" . }}
        key: {{ .Values.secrets.keys.smtpUsername }}
        optional: true
  - name: ISPBILL_SMTP_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "ispbill.secretName" . }}
        key: {{ .Values.secrets.keys.smtpPassword }}
        optional: true
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The pod template of one component.
(dict "root" $ "component" "api" "values" .Values.api "args" (list "serve" "api")
      "ports" (list ...) "probes" (dict ...) "dataVolume" (dict ...))
*/}}
{{- define "ispbill.podTemplate" -}}
{{- $root := .root -}}
{{- $v := .values -}}
metadata:
  labels:
    {{- include "ispbill.componentSelectorLabels" . | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ispbill.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | default 30 }}
  containers:
    - name: {{ .component }}
      image: {{ include "ispbill.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      {{- include "ispbill.env" $root | nindent 6 }}
      {{- with .ports }}
      ports:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .probes }}
      {{- . | nindent 6 }}
      {{- end }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: data
          mountPath: {{ $root.Values.dataDir }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.tmpSizeLimit }}
    {{- if .dataClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .dataClaim }}
    {{- else }}
    - name: data
      emptyDir:
        sizeLimit: {{ $root.Values.tmpSizeLimit }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Probes of the components that listen. */}}
{{- define "ispbill.httpProbes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 5
  failureThreshold: 36
readinessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
# /healthz answers 503 while the ledger is unreachable: that takes the pod out of the Service
# (readiness) but must not restart it, so liveness only asks whether the HTTP server answers.
livenessProbe:
  tcpSocket: {port: http}
  periodSeconds: 20
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{- define "ispbill.grpcProbes" -}}
startupProbe:
  grpc: {port: {{ .Values.ports.grpc }}}
  periodSeconds: 5
  failureThreshold: 36
readinessProbe:
  grpc: {port: {{ .Values.ports.grpc }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
livenessProbe:
  grpc: {port: {{ .Values.ports.grpc }}}
  periodSeconds: 20
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}
