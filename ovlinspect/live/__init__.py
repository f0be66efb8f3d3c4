"""What touches a running system: probing the kernel (more moves here as the tree is re-cut)."""
