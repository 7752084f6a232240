"""Grid-task data in the official TRM/HRM format (format), its batch iterators (sampler), and per-task builders
(sudoku, maze, arc). Import the submodules directly; nothing is re-exported so `import hybrid.data` stays cheap."""
