"""Proposers: each turns (program.md, the canvas, the history) into one change to the canvas."""

import os

from common.errors import ContractError

NAMES = ("auto", "offline", "anthropic", "openai", "command")


def resolve_name(name):
    """'auto': an LLM when a key is configured, else the offline search."""
    if name != "auto":
        return name
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic"
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return "openai"
    return "offline"


def make_proposer(name, args):
    name = resolve_name(name)
    if name == "offline":
        from agent.proposers.offline import OfflineProposer
        return OfflineProposer(seed=args.seed)
    if name in ("anthropic", "openai"):
        from agent.proposers.llm import make_llm
        return make_llm(name, args)
    if name == "command":
        from agent.proposers.command import CommandProposer
        if not args.command:
            raise ContractError("--proposer command needs --command '<cli>', the coding agent to run, e.g. "
                                "--command 'claude -p' or --command 'codex exec'. It gets the prompt on stdin.")
        return CommandProposer(args.command, timeout=args.command_timeout)
    raise ContractError(f"Unknown proposer '{name}'. Choose one of: {', '.join(NAMES)}.")
