"""Generated protobuf bindings of protos/apptsync/v1 (do not edit)."""
