"""Read models: each a projection of the application's notification log.

A projection writes its rows and its tracking position in one transaction, so each
event is applied exactly once and a crashed follower resumes where it stopped; any
projection can be dropped and rebuilt from the log with identical rows.
"""
