"""ispbill's shared kernel: event envelope, event store port and adapters, money, clock, telemetry."""
