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

{{/*
The secrets key (ISPBILL_SECRETS_KEY), which seals the NAS secrets in the ledger: the Secret it
is in (secrets.existingSecret, else a Secret of its own, kept on uninstall: secrets-key.yaml).
*/}}
{{- define "ispbill.secretsKey.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-secrets-key" (include "ispbill.fullname" .) }}
{{- end }}
{{- end }}

{{/*
secrets.secretsKey as given, once checked as the processes will read it: base64 keys of 64
bytes each (88 characters), separated by commas (or white space). Empty when not given.
*/}}
{{- define "ispbill.secretsKey.given" -}}
{{- $given := .Values.secrets.secretsKey }}
{{- if trim $given }}
{{- if .Values.secrets.existingSecret }}
{{- fail (printf "secrets.secretsKey is not used with secrets.existingSecret: put the key in Secret %s under %s" .Values.secrets.existingSecret .Values.secrets.keys.secretsKey) }}
{{- end }}
{{- range regexSplit "[,\\s]+" (trim $given) -1 }}
{{- if not (regexMatch "^[A-Za-z0-9+/]{86}==$" .) }}
{{- fail "secrets.secretsKey: each key (comma-separated) is base64 of 64 random bytes, 88 characters (`ispbill secrets new-key`, or head -c 64 /dev/urandom | base64 -w0)" }}
{{- end }}
{{- end }}
{{- $given }}
{{- end }}
{{- end }}

{{/*
ISPBILL_SECRETS_KEY for the processes that seal or open NAS secrets (api, collector, all-in-one;
not rating, invoicing or notifier), as YAML of a dict: env, and annotations that roll the pods
when secrets.secretsKey (or where the key is read from) changes.
*/}}
{{- define "ispbill.secretsKey.pod" -}}
env:
  - name: ISPBILL_SECRETS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "ispbill.secretsKey.secretName" . }}
        key: {{ .Values.secrets.keys.secretsKey }}
annotations:
  checksum/secrets-key: {{ list (include "ispbill.secretsKey.secretName" .) .Values.secrets.keys.secretsKey (include "ispbill.secretsKey.given" .) | toJson | sha256sum }}
{{- end }}

{{/*
The environment every container gets: the ConfigMap, credentials from the Secret, the
component's own settings, then extraEnv. (dict "root" $ "env" (list ...))
*/}}
{{- define "ispbill.env" -}}
{{- $root := .root -}}
envFrom:
  - configMapRef:
      name: {{ include "ispbill.fullname" $root }}
env:
  {{- with $root }}
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
  {{- end }}
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with $root.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The pod template of one component.
(dict "root" $ "component" "api" "values" .Values.api "args" (list "serve" "api")
      "ports" (list ...) "probes" "..." "dataClaim" "claim name or empty"
      "env" (list ...) "annotations" (dict ...) "volumeMounts" (list ...) "volumes" (list ...))
env, annotations, volumeMounts and volumes are optional, the component's own additions.
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
    {{- with .annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
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
      {{- include "ispbill.env" (dict "root" $root "env" .env) | nindent 6 }}
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
        {{- with .volumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
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
    {{- with .volumes }}
    {{- toYaml . | nindent 4 }}
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

{{/* The kind of a component's workload: the collector keeps its spool in a StatefulSet. */}}
{{- define "ispbill.workloadKind" -}}
{{- if eq . "collector" }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/*
Bytes in a Kubernetes quantity ("1Gi", "500Mi", "2G") or a plain number of bytes, as an
integer string. Decimal (k, M, G, T, P) and binary (Ki ... Pi) suffixes.
*/}}
{{- define "ispbill.quantityBytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- printf "%d" (int64 .) }}
{{- else }}
{{- $q := trim (toString .) }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$" $q) }}
{{- fail (printf "%q is not a size: give bytes or a quantity such as 1Gi, 500Mi or 2G" $q) }}
{{- end }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000
      "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776
      "Pi" 1125899906842624 }}
{{- printf "%d" (int64 (floor (mulf $number (index $units (trimPrefix $number $q))))) }}
{{- end }}
{{- end }}

{{/* Where the collector's spool lives in its pod (ISPBILL_SPOOL_DIR). */}}
{{- define "ispbill.collector.spoolDir" -}}
{{- printf "%s/spool" (trimSuffix "/" .Values.dataDir) }}
{{- end }}

{{/*
ISPBILL_SPOOL_MAX_BYTES: collector.spool.maxBytes, or with "auto" 80 % of the spool volume
(the filesystem's own metadata and reserved blocks take part of a volume; an emptyDir past its
sizeLimit gets the pod evicted).
*/}}
{{- define "ispbill.collector.spoolMaxBytes" -}}
{{- $spool := .Values.collector.spool }}
{{- if eq (toString $spool.maxBytes) "auto" }}
{{- $size := include "ispbill.quantityBytes" $spool.persistence.size }}
{{- printf "%d" (int64 (floor (mulf $size 0.8))) }}
{{- else }}
{{- include "ispbill.quantityBytes" $spool.maxBytes }}
{{- end }}
{{- end }}

{{/* Router pollers (ISPBILL_POLLERS): the file's directory, name and ConfigMap. */}}
{{- define "ispbill.pollers.dir" -}}/etc/ispbill/pollers{{- end }}
{{- define "ispbill.pollers.file" -}}pollers.toml{{- end }}
{{- define "ispbill.pollers.configMapName" -}}
{{- printf "%s-pollers" (include "ispbill.fullname" .) }}
{{- end }}

{{- define "ispbill.pollers.enabled" -}}
{{- $p := .Values.collector.pollers }}
{{- if $p.config }}true
{{- else if $p.existingSecret }}
{{- fail "collector.pollers.existingSecret holds the pollers' secrets: set collector.pollers.config too" }}
{{- end }}
{{- end }}

{{/*
The podTemplate pieces of the pollers, as YAML of a dict: env, volumeMounts, volumes,
annotations. The ConfigMap's pollers.toml and the keys of collector.pollers.existingSecret
are projected into one directory, so `password_file = "bras-1"` (relative to the config) works.
*/}}
{{- define "ispbill.pollers.pod" -}}
{{- if include "ispbill.pollers.enabled" . }}
{{- $p := .Values.collector.pollers }}
{{- $sources := list (dict "configMap" (dict "name" (include "ispbill.pollers.configMapName" .))) }}
{{- with $p.existingSecret }}
{{- $sources = append $sources (dict "secret" (dict "name" .)) }}
{{- end }}
env:
  - name: ISPBILL_POLLERS
    value: {{ printf "%s/%s" (include "ispbill.pollers.dir" .) (include "ispbill.pollers.file" .) | quote }}
  {{- if not (include "ispbill.allInOne" .) }}
  # One poller among the collector replicas: the StatefulSet's first pod (its host name).
  - name: ISPBILL_POLLERS_HOST
    value: {{ printf "%s-collector-0" (include "ispbill.fullname" .) | quote }}
  {{- end }}
volumeMounts:
  - name: pollers
    mountPath: {{ include "ispbill.pollers.dir" . }}
    readOnly: true
volumes:
  - name: pollers
    projected:
      sources:
        {{- toYaml $sources | nindent 8 }}
annotations:
  checksum/pollers: {{ $p.config | sha256sum }}
{{- else }}
env: []
volumeMounts: []
volumes: []
annotations: {}
{{- end }}
{{- end }}
