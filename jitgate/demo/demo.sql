-- Demo target for jitgate's local stack: sample data with PII for the masking work.
CREATE TABLE customers (
    id          serial PRIMARY KEY,
    full_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    phone       text,
    card_number text,
    iban        text,
    ssn         text,
    notes       text,
    profile     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO customers (full_name, email, phone, card_number, iban, ssn, notes, profile) VALUES
 ('Ada Lovelace',   'ada@example.com',    '+44 20 7946 0958', '4111 1111 1111 1111', 'GB82WEST12345698765432', '123-45-6789',
  'Prefers email; backup contact ada.l@analytical.example', '{"tier": "gold", "contact": {"email": "ada@example.com"}}'),
 ('Grace Hopper',   'grace@example.com',  '+1 415 555 0100',  '5555 5555 5555 4444', 'DE89370400440532013000', '219-09-9999',
  'Called from +1 415 555 0199 about invoice 2024-118', '{"tier": "silver", "phones": ["+1 415 555 0100"]}'),
 ('Alan Turing',    'alan@example.com',   '+44 161 496 0000', '3782 822463 10005',   'FR1420041010050500013M02606', '078-05-1120',
  'Card on file ends 0005; prefers phone', '{"tier": "bronze"}'),
 ('Katherine Johnson', 'katherine@example.com', '+1 757 555 0142', '6011 1111 1111 1117', 'NL91ABNA0417164300', '536-22-1234',
  'No notes', '{"tier": "gold", "newsletter": true}'),
 ('Edsger Dijkstra', 'edsger@example.com', '+31 20 555 0123',  '4000 0566 5566 5556', 'NL02ABNA0123456789', '412-34-5678',
  'Reach via edsger@example.com only', '{"tier": "silver"}');

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    amount      numeric(10,2) NOT NULL,
    status      text NOT NULL DEFAULT 'open',
    placed_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders (customer_id, amount, status)
SELECT 1 + (g % 5), round((random() * 500)::numeric, 2), (ARRAY['open','paid','shipped'])[1 + g % 3]
FROM generate_series(1, 200) AS g;

CREATE VIEW order_totals AS
SELECT c.full_name, count(o.id) AS orders, sum(o.amount) AS total
FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.full_name;
