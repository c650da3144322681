

usersu3"unpin

usersu4"merge2