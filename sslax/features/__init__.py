"""Frame features of audio for clustering (MFCC)."""
