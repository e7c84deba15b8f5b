"""api/triton"""
