"""Views: which steps of a multi-agent tape each agent sees.

A tape holds every agent's steps, but each agent converses only with its part of it. A subagent
sees the `Call` that gave it its task and its own steps since then (each call starts a fresh
conversation, like a function call); the caller sees its own steps, including the `Call`, and
the `Respond` that answered it, not the subagent's private work. Observations belong to the
agent whose action they answer; input that answers no action (the user's next message) belongs
to the agent holding the tape when it arrives.

The store, the studio, replay and the exporters still see the whole tape: a view is only what a
node renders into its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from tapeagents.steps import Action, Call, Observation, Respond, Step

__all__ = ["TapeViews"]


class TapeViews:
    """The views of every prefix of `steps`, from one pass over them.

    The tape's root is the root of the first step an agent wrote; steps of other roots (an agent
    that continued the tape) and steps written by hand, without an agent, count as the steps of
    the agent holding the tape. Until the first `Call` or `Respond` the
    tape is one conversation, and every step is visible. A prefix's view depends only on the
    prefix, so a prompt rendered now and the same prompt rebuilt later from a longer tape agree.
    """

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = steps
        self.root = ""
        """The root of the first step an agent wrote (empty before)."""
        self.shared_until = next(
            (i for i, step in enumerate(steps) if isinstance(step, Call | Respond)), len(steps)
        )
        """Prefixes up to this length have no `Call` or `Respond`: one shared conversation."""
        self.owners: list[str] = []
        """The path of the agent each step belongs to (empty: the root, before it wrote)."""
        self.holders: list[str] = []
        """The path of the agent holding the tape after each step."""
        if self.shared_until < len(steps):
            self._scan()

    def view(self, end: int) -> tuple[str, int]:
        """The view after the first `end` steps: the path of the agent that holds the tape then
        (it acts next), and where its conversation begins (the `Call` that gave it its task, or
        0; -1 while the tape is one shared conversation)."""
        if end <= self.shared_until or not self.holders[end - 1]:
            return self.root, -1
        path = self.holders[end - 1]
        for i in range(end - 1, -1, -1):
            step = self.steps[i]
            if isinstance(step, Call) and f"{self.owners[i]}/{step.agent_name}" == path:
                return path, i
        if path != self.root:  # a subagent never called (a hand-made tape): it sees everything
            return path, -1
        return path, 0

    def sees(self, path: str, start: int, i: int) -> bool:
        """Whether the agent at `path`, in its conversation begun at `start`, sees step `i`."""
        if start < 0:
            return True
        owner = self.owners[i] or self.root
        return (
            owner == path
            or (i == start and start > 0)  # the task of a subagent
            or (isinstance(self.steps[i], Respond) and owner.rpartition("/")[0] == path)
        )

    def owner(self, path: str, start: int, i: int) -> str:
        """The agent step `i` belongs to (in a shared conversation: the agent at `path`)."""
        return path if start < 0 else self.owners[i] or self.root

    def _scan(self) -> None:
        root = active = ""
        action_owner: dict[str, str] = {}
        for step in self.steps:
            path = step.metadata.agent
            if path and not root:
                root = self.root = path.partition("/")[0]
            if path and (path == root or path.startswith(root + "/")):
                owner = path
                if isinstance(step, Call):
                    active = f"{path}/{step.agent_name}"
                elif isinstance(step, Respond):
                    active = path.rpartition("/")[0] or path
                else:
                    active = path
            elif isinstance(step, Observation) and step.action_id is not None:
                owner = action_owner.get(step.action_id, active)
            else:  # the user, the environment, or another root's agent
                owner = active
            if isinstance(step, Action):
                action_owner[step.metadata.id] = owner
            self.owners.append(owner)
            self.holders.append(active)
