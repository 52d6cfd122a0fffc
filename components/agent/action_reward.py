"""Reward of the agent-distillation validity term (training/agent_validity.py): whether the text
the student wrote after "Action:" is a tool call the agent loop can execute. It lives here, not in
training/, because the agent protocol (serving/agent/protocol.py) is above the training layer."""
from __future__ import annotations

import json
from collections.abc import Sequence

from serving.agent.protocol import balanced_object, parse_reply
from training.agent_validity import ACTION_LABEL


def action_reward(text: str, tool_names: Sequence[str]) -> float:
    """1.0 when the generated rest of an Action line (after "Action:") is one JSON tool call the
    agent loop can execute — serving/agent/protocol.parse_reply reads it, as the loop does — with
    the line starting at its object, a registry tool's name and "arguments" an object as written
    (parse_reply would also take a JSON string holding one; the acting evaluation does not);
    else 0.0."""
    line = text.split("\n", 1)[0]
    if not line.lstrip().startswith("{"):
        return 0.0
    _, action, err = parse_reply(ACTION_LABEL + line)
    if err is not None or action is None or action["name"] not in tool_names:
        return 0.0
    begin, end = balanced_object(line)
    return float(isinstance(json.loads(line[begin:end]).get("arguments"), dict))
