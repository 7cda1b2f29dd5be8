"""Pure planners: from what is observed, which writes bring the cluster to what a
ThpCheck asks for. They read the contract; the controller applies their plans."""
