"""The one catalogue of costtrace's Kafka topics."""
