"""The stack as data: layers read safely, the stack, overlay xattrs decoded."""
