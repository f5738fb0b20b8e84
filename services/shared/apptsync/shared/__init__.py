"""What two or more apptsync services need: settings, errors, the canonical appointment, database
access, Kafka wiring and credential encryption. Never imports a service (an import-linter contract)."""
