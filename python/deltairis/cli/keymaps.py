"""Keyboard maps of the live play window (``deltairis-play``).

A :class:`Keymap` turns the keys of one frame (pressed this frame or held down) into an action index
of the env's ``action_names``. One map per env family:

* Crafter: the crafter package's own GUI keys (``crafter/run_gui.py``): WASD move, space ``do``, tab
  ``sleep``, R/T/F/P place stone/table/furnace/plant, 1-6 make wood/stone/iron pickaxe and sword.
* Atari: the arrows or WASD give a direction, space adds FIRE; the pressed keys are combined into an
  ALE action name (``up`` + ``right`` + ``fire`` -> ``uprightfire``) and looked up in the game's
  minimal action set, dropping parts the game lacks (Breakout has no ``upfire``: up+space -> ``fire``).
* Toy (``GridGoal``): the arrows or WASD for up/down/left/right.
* Anything else: digits 1-9 for actions 1-9.

No key gives action 0 (``noop`` in all three families). The keys that drive the window itself (Enter,
``.``, ``,``, ``m``, Esc/q) are in :data:`CONTROL_KEYS`; :data:`EPISODE_KEYMAP` steps through saved
episodes with ``-e``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame

# crafter/run_gui.py's keymap, by action name.
CRAFTER_KEYS: dict[int, str] = {
    pygame.K_a: "move_left",
    pygame.K_d: "move_right",
    pygame.K_w: "move_up",
    pygame.K_s: "move_down",
    pygame.K_SPACE: "do",
    pygame.K_TAB: "sleep",
    pygame.K_r: "place_stone",
    pygame.K_t: "place_table",
    pygame.K_f: "place_furnace",
    pygame.K_p: "place_plant",
    pygame.K_1: "make_wood_pickaxe",
    pygame.K_2: "make_stone_pickaxe",
    pygame.K_3: "make_iron_pickaxe",
    pygame.K_4: "make_wood_sword",
    pygame.K_5: "make_stone_sword",
    pygame.K_6: "make_iron_sword",
}

TOY_KEYS: dict[int, str] = {
    pygame.K_UP: "up",
    pygame.K_w: "up",
    pygame.K_DOWN: "down",
    pygame.K_s: "down",
    pygame.K_LEFT: "left",
    pygame.K_a: "left",
    pygame.K_RIGHT: "right",
    pygame.K_d: "right",
}

# Atari: each key contributes one part of an ALE action name.
ATARI_PARTS: dict[int, str] = {
    pygame.K_UP: "up",
    pygame.K_w: "up",
    pygame.K_DOWN: "down",
    pygame.K_s: "down",
    pygame.K_LEFT: "left",
    pygame.K_a: "left",
    pygame.K_RIGHT: "right",
    pygame.K_d: "right",
    pygame.K_SPACE: "fire",
}

QUIT_KEYS = (pygame.K_ESCAPE, pygame.K_q)
RESET_KEYS = (pygame.K_RETURN, pygame.K_KP_ENTER)
PAUSE_KEY = pygame.K_PERIOD
RECORD_KEY = pygame.K_COMMA
SWITCH_KEY = pygame.K_m
CONTROL_KEYS = frozenset((*QUIT_KEYS, *RESET_KEYS, PAUSE_KEY, RECORD_KEY, SWITCH_KEY))

# -e: commands of the episode replay (index = command).
EPISODE_COMMANDS = [
    "stay",
    "previous_frame",
    "next_frame",
    "back_10",
    "forward_10",
    "first_frame",
    "previous_episode",
    "next_episode",
]
EPISODE_KEYS: dict[int, str] = {
    pygame.K_LEFT: "previous_frame",
    pygame.K_RIGHT: "next_frame",
    pygame.K_PAGEUP: "back_10",
    pygame.K_PAGEDOWN: "forward_10",
    pygame.K_HOME: "first_frame",
    pygame.K_UP: "previous_episode",
    pygame.K_DOWN: "next_episode",
}


@dataclass
class Keymap:
    """Keys -> action index of ``names``; ``keys`` maps single keys, ``parts`` composes ALE names."""

    names: list[str]
    keys: dict[int, int] = field(default_factory=dict)
    parts: dict[int, str] | None = None

    def action(self, pressed: Sequence[int]) -> int | None:
        """The action of this frame's keys (oldest first), or None when no mapped key is among them.

        Single-key maps: the last mapped key wins. Atari: all parts pressed are combined.
        """
        if self.parts is not None:
            return self._compose({self.parts[k] for k in pressed if k in self.parts})
        action = None
        for k in pressed:
            if k in self.keys:
                action = self.keys[k]
        return action

    def _compose(self, parts: set[str]) -> int | None:
        if not parts:
            return None
        v = (
            "up"
            if "up" in parts and "down" not in parts
            else "down"
            if "down" in parts and "up" not in parts
            else ""
        )
        h = (
            "right"
            if "right" in parts and "left" not in parts
            else "left"
            if "left" in parts and "right" not in parts
            else ""
        )
        f = "fire" if "fire" in parts else ""
        # The full combination first, then with parts the game lacks dropped.
        for name in (v + h + f, h + f, v + f, v + h, h, v, f):
            if name and name in self.names:
                return self.names.index(name)
        return None

    @property
    def mapped_keys(self) -> list[int]:
        return list(self.parts if self.parts is not None else self.keys)

    def describe(self) -> list[tuple[str, str]]:
        """(key name, action name) pairs, for ``--help``-style listings."""
        if self.parts is not None:
            out = []
            for k, part in self.parts.items():
                out.append((pygame.key.name(k), part))
            return out
        return [(pygame.key.name(k), self.names[a]) for k, a in self.keys.items()]


def _by_name(names: Sequence[str], keys: dict[int, str]) -> dict[int, int]:
    lower = [n.lower() for n in names]
    return {k: lower.index(n) for k, n in keys.items() if n in lower}


def keymap_for(env_name: str | None, action_names: Sequence[str]) -> Keymap:
    """The keymap of an env family (``crafter`` | ``atari`` | ``toy``) for its ``action_names``."""
    names = [str(n).lower() for n in action_names]
    if env_name == "crafter":
        return Keymap(names, _by_name(names, CRAFTER_KEYS))
    if env_name == "atari":
        return Keymap(names, parts=dict(ATARI_PARTS))
    if env_name == "toy":
        return Keymap(names, _by_name(names, TOY_KEYS))
    digits = [
        pygame.K_1,
        pygame.K_2,
        pygame.K_3,
        pygame.K_4,
        pygame.K_5,
        pygame.K_6,
        pygame.K_7,
        pygame.K_8,
        pygame.K_9,
    ]
    return Keymap(names, {k: i + 1 for i, k in enumerate(digits) if i + 1 < len(names)})


def episode_keymap() -> Keymap:
    return Keymap(list(EPISODE_COMMANDS), _by_name(EPISODE_COMMANDS, EPISODE_KEYS))


__all__ = ["CONTROL_KEYS", "EPISODE_COMMANDS", "Keymap", "episode_keymap", "keymap_for"]
