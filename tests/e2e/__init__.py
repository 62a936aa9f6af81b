"""End-to-end tests: the controller on the full test bed (they arrive with the controller)."""
