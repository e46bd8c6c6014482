"""ispbill's shared kernel: event envelope, event store and bus ports and adapters, money, clock."""
