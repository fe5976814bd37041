"""Hello: a chat assistant with a calculator tool (see README.md beside this file)."""
