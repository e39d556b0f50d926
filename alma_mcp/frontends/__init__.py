"""The ways in: the MCP server (stdio and HTTP), the command line, the in-process harness for
agent loops, and the local review UI. Each one drives the service (alma_mcp.service.ALMA)."""
