"""LLM proposers through the official SDKs: Anthropic, and any OpenAI-compatible endpoint (cloud or local).

Keys come from the environment and go only to the SDK client. Replies are parsed as SEARCH/REPLACE text
(agent.edits); nothing in them is ever executed.
"""

import os
import time

from agent.edits import EditError, edit_canvas
from agent.proposers import prompt
from agent.proposers.base import NoProposal, Proposal
from common.errors import ContractError

# USD per million tokens (input, output). A default only: --price overrides, and unknown models get no cost.
PRICES = {
    "claude-opus-4": (15.0, 75.0), "claude-opus-4-5": (5.0, 25.0), "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0), "gpt-5-mini": (0.25, 2.0), "gpt-5-nano": (0.05, 0.4), "gpt-5": (1.25, 10.0),
    "gpt-4.1": (2.0, 8.0), "gpt-4o-mini": (0.15, 0.6), "gpt-4o": (2.5, 10.0),
}
DEFAULT_MODEL = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-5.5"}  # current in the installed SDKs
MAX_TOKENS = 8192


def price_for(model, override=None):
    if override:
        return override
    best = max((k for k in PRICES if model.startswith(k)), key=len, default=None)
    return PRICES.get(best)


class LLMProposer:
    name = "llm"

    def __init__(self, model, retries=3, price=None, api_retries=6, backoff=10.0):
        self.model, self.retries, self.price = model, retries, price_for(model, price)
        self.api_retries, self.backoff = api_retries, backoff

    def complete(self, system, messages):
        """(text, tokens_in, tokens_out) for one request. Provider-specific."""
        raise NotImplementedError

    def cost(self, tin, tout):
        return None if self.price is None else (tin * self.price[0] + tout * self.price[1]) / 1e6

    def propose(self, ctx):
        return self._converse(ctx, prompt.user_prompt(ctx), ctx.text)

    def fix(self, ctx, proposal, feedback):
        try:
            return self._converse(ctx, prompt.fix_prompt(ctx, proposal.description, feedback), ctx.text)
        except NoProposal:
            return None

    def _converse(self, ctx, first, text):
        """Ask, and send back every reply that does not parse or apply, up to self.retries times."""
        system = prompt.system_prompt(ctx)
        messages = [{"role": "user", "content": first}]
        tin = tout = 0
        started = time.monotonic()
        error = None
        for _ in range(1 + self.retries):
            reply, i, o = self._call(system, messages)
            tin, tout = tin + i, tout + o
            messages.append({"role": "assistant", "content": reply})
            try:
                description, new = edit_canvas(reply, text, ctx.canvas)
            except EditError as e:
                error = str(e)
                messages.append({"role": "user", "content": prompt.retry_prompt(error, ctx.canvas)})
                continue
            return Proposal(description, new, meta={"model": self.model, "turns": len(messages) // 2,
                                                    "transcript": {"system": system, "messages": messages}},
                            tokens_in=tin, tokens_out=tout, cost_usd=self.cost(tin, tout),
                            seconds=time.monotonic() - started)
        raise NoProposal(f"No applicable edit after {1 + self.retries} replies; the last error: {error}",
                         tokens_in=tin, tokens_out=tout, cost_usd=self.cost(tin, tout))

    def _call(self, system, messages):
        """complete() with backoff on transient API errors (the SDK retries first, this covers long outages)."""
        for attempt in range(self.api_retries + 1):
            try:
                return self.complete(system, messages)
            except self.fatal as e:
                raise ContractError(f"The {self.name} API refused the request ({type(e).__name__}, status "
                                    f"{getattr(e, 'status_code', '?')}): check the key, the model name "
                                    f"('{self.model}') and the base URL.") from None
            except self.transient:
                if attempt == self.api_retries:
                    raise ContractError(f"The {self.name} API kept failing after {self.api_retries} retries with "
                                        "backoff. Check the service and the network, then resume with --resume.")
                time.sleep(min(300.0, self.backoff * 2 ** attempt))


class OpenAIProposer(LLMProposer):
    name = "openai"

    def __init__(self, model, base_url=None, **kw):
        import openai
        super().__init__(model, **kw)
        key = os.environ.get("OPENAI_API_KEY")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not key and not base_url:
            raise ContractError("--proposer openai needs OPENAI_API_KEY in the environment, or --base-url for an "
                                "OpenAI-compatible server (a local one needs no key).")
        self.client = openai.OpenAI(api_key=key or "not-needed", base_url=base_url, max_retries=3, timeout=600)
        self.transient = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
        self.fatal = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                      openai.BadRequestError)

    def complete(self, system, messages):
        resp = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "system", "content": system}, *messages])
        text = resp.choices[0].message.content or ""
        u = resp.usage
        return text, (u.prompt_tokens if u else 0), (u.completion_tokens if u else 0)


class AnthropicProposer(LLMProposer):
    name = "anthropic"

    def __init__(self, model, base_url=None, **kw):
        import anthropic
        super().__init__(model, **kw)
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key and not base_url:
            raise ContractError("--proposer anthropic needs ANTHROPIC_API_KEY in the environment.")
        self.client = anthropic.Anthropic(api_key=key or "not-needed", base_url=base_url, max_retries=3,
                                          timeout=600)
        self.transient = (anthropic.APIConnectionError, anthropic.RateLimitError, anthropic.InternalServerError)
        self.fatal = (anthropic.AuthenticationError, anthropic.PermissionDeniedError, anthropic.NotFoundError,
                      anthropic.BadRequestError)

    def complete(self, system, messages):
        resp = self.client.messages.create(model=self.model, max_tokens=MAX_TOKENS, system=system,
                                           messages=messages)
        text = "".join(b.text for b in resp.content if getattr(b, "type", "") == "text")
        return text, resp.usage.input_tokens, resp.usage.output_tokens


def make_llm(name, args):
    model = args.model or os.environ.get(f"{name.upper()}_MODEL") or DEFAULT_MODEL[name]
    price = None
    if args.price:
        try:
            price = tuple(float(x) for x in args.price.split(","))
            assert len(price) == 2
        except (ValueError, AssertionError):
            raise ContractError(f"--price '{args.price}' is not 'IN,OUT', USD per million tokens (e.g. 3,15)."
                                ) from None
    cls = OpenAIProposer if name == "openai" else AnthropicProposer
    return cls(model, base_url=args.base_url, retries=args.retries, price=price, backoff=args.api_backoff)
