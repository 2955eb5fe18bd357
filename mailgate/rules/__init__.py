"""The rules stage: organizations by domain, routing and automation rules → actions.

Input: a parsed message, its ticket and look-ups passed in by the pipeline. Output: actions,
each rule recording hit or miss and why. Built by the organizations and automation issue; the
pipeline of the inbound core applies no rules yet, so nothing here is called.
"""
