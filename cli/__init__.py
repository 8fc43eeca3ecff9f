"""The `slmops` command line: the layer above the sides. One module per command group, over `common`.

It may import the shared core (slmops), the control plane, the agent and training; none of them imports it.
Each command imports its side lazily, so an agent-only install (no torch) runs `slmops agent run` without ever
importing training code.
"""
