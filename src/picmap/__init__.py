"""picmap: 2-D maps of image collections with t-SimCNE."""
