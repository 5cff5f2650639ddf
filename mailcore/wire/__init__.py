"""What travels on the wire, shared by the server and client sides: SMTP replies, the DATA stream
(dot-stuffing and unstuffing), POP3's multi-line form and SASL PLAIN. Knows no database and no
mailcore level above the store."""
