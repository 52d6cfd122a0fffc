"""The agent runtime: the Thought / Action / Observation protocol (protocol.py), its tools
(tools.py: python in the sandbox, BM25 retrieve, finish), the server's agent loop (loop.py) and
chain-of-thought self-verification (verify.py). components/agent (trajectory generation for
distillation) imports the protocol and tools from here, so the teacher, the student and the
server read and write one format."""
