"""The orchestrators: the pipeline that takes one spooled message through the stages into the
store (`process`, `deliver`, `quarantine`), the rules applied to tickets (`automation`,
`scheduler`), and the agents' actions (`agent_actions`)."""
