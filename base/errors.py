"""The one base of every error Lethe raises, and what each interface makes of it: the CLI exits
with `exit_code` (1: it ran and failed; 2: change the command or config) and the API answers
`http_status` (500 unless the error is a client's mistake) with the OpenAI error `code`.
guard, adapters and serving each derive their own base from it, so a caller catches one type.
"""


class LetheError(Exception):
    exit_code = 1  # the command ran and failed
    http_status = 500  # the server failed; a client's mistake overrides this with a 4xx
    code: str | None = None  # OpenAI error `code`
