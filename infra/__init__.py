"""The PyAnamo CDK app: one construct per concern, wired by PyAnamoStack."""
