"""spamops email parsing and the feature pipeline shared by training and inference"""
