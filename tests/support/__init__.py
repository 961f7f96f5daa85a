"""What the tests and bench/ share: real server processes and the environment a child starts with."""
