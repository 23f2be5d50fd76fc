"""What a running job needs from its machine: device, DDP, preemption, progress, provenance."""
