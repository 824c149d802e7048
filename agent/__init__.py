"""The overnight experiment loop: propose one change to a backend's train.py, train, keep or revert, log."""
