"""What the operator sees in a terminal beyond one-line messages: the workers' table (`cluster status`, live with
`--watch`) and the progress of long work on several hosts (`cluster install`, `cluster up HOSTS`)."""
