"""The monitor: consume beats from Kafka, score them in micro-batches, emit alerts."""
