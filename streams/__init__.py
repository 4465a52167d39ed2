"""Kafka topics, record schemas, the Faust app and agents, HTTP endpoints and the local broker."""
