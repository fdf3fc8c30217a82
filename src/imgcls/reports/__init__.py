"""What a run shows people: tables and pictures of its results (files, TensorBoard)."""
