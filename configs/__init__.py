"""Python config files: get_config(arg) with a smoke variant."""
