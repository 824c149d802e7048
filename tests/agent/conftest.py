from agentkit import repo  # noqa: F401  (the fixture)
