"""The agent's tools: moved to serving/agent/tools.py (the server's agent mode runs them too;
serving may not import components/). Re-exported here so trajectory generation and its tests
keep their imports."""

from serving.agent.tools import (  # noqa: F401
    CORPUS_SUFFIXES,
    TOOL_NAMES,
    FinishTool,
    PythonTool,
    RetrieveTool,
    ToolResult,
    _bad,
    _folder_documents,
    _ingest_documents,
    _passages,
    _truncate,
    build_tools,
    call_tool,
    describe_tools,
    load_corpus,
)
