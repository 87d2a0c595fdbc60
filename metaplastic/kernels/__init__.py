"""Optional native CPU kernels (compiled on first use; pure-torch fallbacks elsewhere)."""
