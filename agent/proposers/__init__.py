"""Proposers: each turns (program.md, the canvas, the history) into one change to the canvas."""

import importlib.util
import os

from common.errors import ContractError

NAMES = ("auto", "offline", "anthropic", "openai", "command")
SEARCHES = ("coordinate", "optuna")  # the offline proposer's searches: offline.py, optuna_search.py


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
    resolved = resolve_name(name)
    search = getattr(args, "search", None) or "coordinate"
    if search not in SEARCHES:
        raise ContractError(f"Unknown --search '{search}'. Choose one of: {', '.join(SEARCHES)}.")
    if search != "coordinate" and resolved != "offline":
        why = f" ('{name}' picked it: its API key or base URL is set)" if name != resolved else ""
        raise ContractError(f"--search {search} is a search of the offline proposer, but the proposer is "
                            f"{resolved}{why}. Add --proposer offline, or leave out --search.")
    name = resolved
    if name == "offline":
        if search == "optuna":
            if importlib.util.find_spec("optuna") is None:
                raise ContractError("--search optuna needs the optuna package, one of the agent's dependencies: "
                                    "pip install -e '.[agent]' (or pip install optuna).")
            from agent.proposers.optuna_search import OptunaProposer
            return OptunaProposer(seed=args.seed)
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
