"""The embedded demo corpus: synthetic read speech with word and phoneme alignments.

Importing this package registers the TFDS dataset `sslax_demo_corpus`; see `builder`.
"""

from sslax.data.demo_corpus import builder

__all__ = ["builder"]
