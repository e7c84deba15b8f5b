"""`trtserve bench`: closed/open-loop streaming load generator and reporter."""
