"""The cost ledger: tokens in and out, their price, and whether the budget is spent. Pure state."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Ledger:
    """Running totals of a run; ``cost_usd`` uses prices per million input/output tokens."""

    price_input_per_million: float = 0.0
    price_output_per_million: float = 0.0
    max_cost_usd: float | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lost_requests: int = 0
    """Of ``requests``: sent, maybe answered and billed, but never written (in flight when a run was
    killed). Their prompt tokens are estimated in ``prompt_tokens``; their completion tokens are unknown."""

    @property
    def cost_usd(self) -> float:
        return self.cost_of(self.prompt_tokens, self.completion_tokens)

    def cost_of(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.price_input_per_million
                + completion_tokens * self.price_output_per_million) / 1e6

    def add(self, prompt_tokens: int, completion_tokens: int, requests: int = 1) -> None:
        self.requests += requests
        self.prompt_tokens += int(prompt_tokens)
        self.completion_tokens += int(completion_tokens)

    @property
    def over_budget(self) -> bool:
        return self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd

    def as_dict(self) -> dict:
        return {**asdict(self), "cost_usd": round(self.cost_usd, 6)}

    @classmethod
    def at_batch_prices(cls, price_input_per_million: float, price_output_per_million: float,
                        discount: float, **totals: object) -> Ledger:
        """A ledger for Batch API requests: the online prices times ``discount`` (OpenAI: 0.5)."""
        return cls(price_input_per_million * discount, price_output_per_million * discount, **totals)
