"""One module per Kafka message: its content type, its encoding and decoding, and its topic.

Both the producing and the consuming service go through the message's module, so a change to a
message is one place plus the proto (`protos/apptsync/v1/pages.proto`).
"""
