

nopek2

itemsk2