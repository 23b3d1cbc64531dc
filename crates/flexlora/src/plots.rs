//! Rank heatmaps and loss curves as PNG pictures (filled in by the plots work).
