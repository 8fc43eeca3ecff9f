"""The control plane's HTTP side: the admin dashboard (server-rendered HTML, inline SVG), JSON for it, and
the control plane's own Prometheus /metrics."""
