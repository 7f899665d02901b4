"""The ground floor: the vocabulary every other package speaks.

Models (offers, instances, sessions and their statuses), errors, units and redaction. This
package imports nothing else of gpu-shopper's (tests/test_layers.py enforces it), so
providers, state, remote, core and cli may all import it.
"""
