"""Where stacks come from: arguments, live mounts and mountinfo, containers, inspect JSON, composefs dumps and images, stack files, demos."""
