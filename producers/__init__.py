"""Producers: replay recorded beats onto Kafka as a simulated bedside feed."""

DEFAULT_TOPIC = "beatmon.beats"
